{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set sls_service_clean = tplroot ~ '.sensor.service.clean' %}
include:
  - {{ sls_service_clean }}
{#- Paths only, no pillar checks: clean must work even when the pillar is already gone. #}
{%- for name in ['sensor.toml', 'secrets/sensor-broker-password', 'tls/sensor-broker-ca.pem'] %}

saltmarsh-sensor-config-clean-{{ name | replace('/', '-') | replace('.', '-') }}-file-absent:
  file.absent:
    - name: {{ paths.config_dir }}/{{ name }}
    - require:
      - sls: {{ sls_service_clean }}
{%- endfor %}
