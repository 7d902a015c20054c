{#- The salt-master: the saltmarsh relay engine, the forwarder-restart reactor, nodegroups. #}
include:
  - .config
  - .service
