{#- The Elasticsearch index templates, applied once per installed saltmarsh version: the stamp
    names the version, so an upgrade (new templates) applies them again and nothing else does. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- from tplroot ~ '/cloud/_cloud.jinja' import cloud, instances, ingester_state_dir with context %}
{%- if cloud.elasticsearch.enabled %}
{%-   set stamp = ingester_state_dir ~ '/es-templates-' ~ saltmarsh.install.version ~ '.applied' %}
include:
  - {{ tplroot }}.cloud.config

saltmarsh-cloud-elasticsearch-templates-cmd-run:
  cmd.run:
    - name: {{ paths.bin }}/saltmarsh es-templates --config {{ instances[0].conf }} && touch {{ stamp }}
    - unless: test -e {{ stamp }}
    - require:
      - sls: {{ tplroot }}.cloud.config
{%- else %}

saltmarsh-cloud-elasticsearch-templates-test-nop:
  test.nop:
    - name: saltmarsh:cloud:elasticsearch:enabled is false; no index templates
{%- endif %}
