{#- The sensor agent: its config (driver and GPIO pin from the site pillar) and its systemd unit. #}
include:
  - saltmarsh.common
  - .config
  - .service
