# The cloud side (non-secret). Matched by minion id from fleet.yaml's cloud.minions.
saltmarsh:
  cloud:
    broker:
      ca_cert: |
        -----BEGIN CERTIFICATE-----
        PLACEHOLDER-EXAMPLE-FLEET-CA-replace-with-your-fleet-CA-certificate
        -----END CERTIFICATE-----
      tls_cert: |
        -----BEGIN CERTIFICATE-----
        PLACEHOLDER-EXAMPLE-cloud-broker-certificate
        -----END CERTIFICATE-----
    ingester:
      instances: 2
    elasticsearch:
      enabled: false
      hosts: ['https://es.example.net:9200']
    kinesis:
      enabled: false
      stream_name: saltmarsh-events
      region: eu-west-1
