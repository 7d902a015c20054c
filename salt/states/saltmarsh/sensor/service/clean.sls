{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}

saltmarsh-sensor-service-clean-service-dead:
  service.dead:
    - name: {{ saltmarsh.sensor.service }}
    - enable: false

saltmarsh-sensor-service-clean-unit-file-absent:
  file.absent:
    - name: {{ paths.unit_dir }}/{{ saltmarsh.sensor.service }}.service
    - require:
      - service: saltmarsh-sensor-service-clean-service-dead
