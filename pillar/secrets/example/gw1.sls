# PLACEHOLDER secrets for the example site: never use these outside the test fleet.
# Matched by minion id: gw1 only.
saltmarsh:
  sites:
    example:
      gateways:
        gw1:
          # The forwarder's login to gw1's own Mosquitto.
          forwarder_password: example-gw1-forwarder-placeholder-password
          # With BLE devices in sites/example.sls: the BLE collector's login to gw1's own Mosquitto,
          # and one bindkey (32 hex characters) per encrypted bthome device, keyed by its MAC.
          # ble_collector_password: example-gw1-ble-placeholder-password
          # ble_bindkeys:
          #   "54:48:E6:8F:80:A5": 231d39c1d7cc1ab1aee224cd096db932
          # gw1's client certificate and key for the TLS uplink, issued by the fleet CA.
          tls_cert: |
            -----BEGIN CERTIFICATE-----
            PLACEHOLDER-EXAMPLE-gw1-client-certificate
            -----END CERTIFICATE-----
          tls_key: |
            -----BEGIN PRIVATE KEY-----
            PLACEHOLDER-EXAMPLE-gw1-client-key
            -----END PRIVATE KEY-----
