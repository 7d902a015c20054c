# PLACEHOLDER secrets for the example site: never use these outside the test fleet.
# Matched by minion id: sensor2 itself and its gateway gw1.
saltmarsh:
  sites:
    example:
      devices:
        sensor2:
          password: example-sensor2-placeholder-password
