{#- master.d is read only at start: restart the master when saltmarsh's part of it changes. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh with context %}
{%- set sls_config = tplroot ~ '.master.config' %}
include:
  - {{ sls_config }}
{%- if saltmarsh.master.manage_service %}

saltmarsh-master-service-running:
  service.running:
    - name: salt-master
    - watch:
      - sls: {{ sls_config }}
{%- else %}

saltmarsh-master-service-test-nop:
  test.nop:
    - name: saltmarsh:master:manage_service is false; restart salt-master to apply master.d
{%- endif %}
