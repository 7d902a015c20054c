{#- Removes what every role made: services first, then config, then packages. #}
{%- set tplroot = tpldir.split('/')[0] %}
include:
  - {{ tplroot }}.master.clean
  - {{ tplroot }}.cloud.clean
  - {{ tplroot }}.gateway.clean
  - {{ tplroot }}.sensor.clean
  - {{ tplroot }}.common.clean
