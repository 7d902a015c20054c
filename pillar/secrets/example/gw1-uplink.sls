# PLACEHOLDER secret for the example site: never use it outside the test fleet.
# Matched by minion id: gw1 and the cloud minions (it goes into the cloud broker's password file).
saltmarsh:
  sites:
    example:
      gateways:
        gw1:
          uplink_password: example-gw1-uplink-placeholder-password
