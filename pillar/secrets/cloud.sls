# PLACEHOLDER secrets for the example cloud: never use these outside the test fleet.
# Matched by minion id (fleet.yaml cloud.minions).
saltmarsh:
  cloud:
    broker:
      tls_key: |
        -----BEGIN PRIVATE KEY-----
        PLACEHOLDER-EXAMPLE-cloud-broker-key
        -----END PRIVATE KEY-----
    ingester:
      password: example-ingester-placeholder-password
    # The commander's broker user (saltmarsh:cloud:commander, when enabled on the master).
    commander:
      password: example-commander-placeholder-password
    elasticsearch:
      api_key: example-elasticsearch-placeholder-api-key
    kinesis:
      access_key_id: EXAMPLEPLACEHOLDERKEYID
      secret_access_key: example-aws-placeholder-secret-access-key
