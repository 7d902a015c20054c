{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set sls_service_clean = tplroot ~ '.cloud.service.clean' %}
include:
  - {{ sls_service_clean }}
{#- Paths only; the sink database and the broker's data directory are kept. #}
{%- set made = [
      paths.mosquitto_dir ~ '/mosquitto.conf',
      paths.mosquitto_dir ~ '/saltmarsh.passwd',
      paths.mosquitto_dir ~ '/saltmarsh.passwd.src',
      paths.mosquitto_dir ~ '/saltmarsh.acl',
      paths.mosquitto_dir ~ '/saltmarsh-ca.pem',
      paths.mosquitto_dir ~ '/saltmarsh-broker.crt',
      paths.mosquitto_dir ~ '/saltmarsh-broker.key',
      paths.secrets_dir ~ '/ingester-broker-password',
      paths.secrets_dir ~ '/elasticsearch-api-key',
      paths.secrets_dir ~ '/aws-access-key-id',
      paths.secrets_dir ~ '/aws-secret-access-key',
    ] %}
{%- for path in made %}

saltmarsh-cloud-config-clean-{{ path.split('/')[-1] | replace('.', '-') }}-file-absent:
  file.absent:
    - name: {{ path }}
    - require:
      - sls: {{ sls_service_clean }}
{%- endfor %}

saltmarsh-cloud-config-clean-ingesters-file-tidied:
  file.tidied:
    - name: {{ paths.config_dir }}
    - matches: ['^ingester-[0-9]+\.toml$']
    - rmdirs: false
    - require:
      - sls: {{ sls_service_clean }}
