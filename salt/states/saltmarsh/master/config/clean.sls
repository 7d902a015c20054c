{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set sls_service_clean = tplroot ~ '.master.service.clean' %}
include:
  - {{ sls_service_clean }}

saltmarsh-master-config-clean-file-absent:
  file.absent:
    - name: {{ paths.master_conf_dir }}/saltmarsh.conf
    - require:
      - sls: {{ sls_service_clean }}

saltmarsh-master-config-clean-reactor-file-absent:
  file.absent:
    - name: {{ paths.reactor_dir }}
    - require:
      - sls: {{ sls_service_clean }}
