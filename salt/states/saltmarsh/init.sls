{#- Everything this minion's roles grain asks for; top.sls targets the roles one by one. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import roles with context %}
include:
  - {{ tplroot }}.common
{%- for role in ['sensor', 'gateway', 'cloud', 'master'] if role in roles %}
  - {{ tplroot }}.{{ role }}
{%- endfor %}
