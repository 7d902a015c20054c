{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh with context %}
{%- set mosquitto = saltmarsh.gateway.mosquitto %}
{%- set sls_config_clean = tplroot ~ '.gateway.config.clean' %}
include:
  - {{ sls_config_clean }}
{%- if mosquitto.docker.enabled %}

saltmarsh-gateway-package-clean-mosquitto-docker-image-absent:
  docker_image.absent:
    - name: {{ mosquitto.docker.image }}
    - require:
      - sls: {{ sls_config_clean }}
{%- else %}

{#- The package may serve more than saltmarsh (and the cloud role shares it): leave it installed. #}
saltmarsh-gateway-package-clean-mosquitto-test-nop:
  test.nop:
    - name: leaving the {{ mosquitto.package }} package installed
{%- endif %}
