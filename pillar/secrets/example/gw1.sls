# PLACEHOLDER secrets for the example site: never use these outside the test fleet.
# Matched by minion id: gw1 only.
saltmarsh:
  sites:
    example:
      gateways:
        gw1:
          # The forwarder's login to gw1's own Mosquitto.
          forwarder_password: example-gw1-forwarder-placeholder-password
          # gw1's client certificate and key for the TLS uplink, issued by the fleet CA.
          tls_cert: |
            -----BEGIN CERTIFICATE-----
            PLACEHOLDER-EXAMPLE-gw1-client-certificate
            -----END CERTIFICATE-----
          tls_key: |
            -----BEGIN PRIVATE KEY-----
            PLACEHOLDER-EXAMPLE-gw1-client-key
            -----END PRIVATE KEY-----
