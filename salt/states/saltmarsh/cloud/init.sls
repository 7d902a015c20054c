{#- The cloud side: Mosquitto with TLS and per-gateway credentials, the ingesters and their sink,
    and (behind a switch) the Elasticsearch index templates. #}
include:
  - saltmarsh.common
  - .package
  - .config
  - .service
  - .elasticsearch
