{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set sls_service_clean = tplroot ~ '.gateway.service.clean' %}
include:
  - {{ sls_service_clean }}
{#- Paths only, no pillar checks, so clean works when the pillar is gone. The broker's data
    directory and the forwarder's and the BLE collector's spools are kept: they may hold acked, unsent
    readings. #}
{%- set made = [
      paths.mosquitto_dir ~ '/mosquitto.conf',
      paths.mosquitto_dir ~ '/saltmarsh.passwd',
      paths.mosquitto_dir ~ '/saltmarsh.passwd.src',
      paths.mosquitto_dir ~ '/saltmarsh.acl',
      paths.config_dir ~ '/forwarder.toml',
      paths.secrets_dir ~ '/forwarder-local-password',
      paths.secrets_dir ~ '/forwarder-uplink-password',
      paths.tls_dir ~ '/uplink-ca.pem',
      paths.tls_dir ~ '/gateway.crt',
      paths.tls_dir ~ '/gateway.key',
      paths.config_dir ~ '/ble.toml',
      paths.secrets_dir ~ '/ble-broker-password',
      paths.secrets_dir ~ '/ble-keys',
    ] %}
{%- for path in made %}

saltmarsh-gateway-config-clean-{{ path.split('/')[-1] | replace('.', '-') }}-file-absent:
  file.absent:
    - name: {{ path }}
    - require:
      - sls: {{ sls_service_clean }}
{%- endfor %}
