# PLACEHOLDER secrets for the example site: never use these outside the test fleet.
# Matched by minion id: sensor1 itself and its gateway gw1.
saltmarsh:
  sites:
    example:
      devices:
        sensor1:
          password: example-sensor1-placeholder-password
