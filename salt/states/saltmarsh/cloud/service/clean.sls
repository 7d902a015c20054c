{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set cloud = saltmarsh.cloud %}
{%- for index in range(1, cloud.ingester.instances | int + 1) %}
{%-   set service = cloud.ingester.service_prefix ~ '-' ~ index %}

saltmarsh-cloud-service-clean-ingester-{{ index }}-service-dead:
  service.dead:
    - name: {{ service }}
    - enable: false
    - require_in:
      - service: saltmarsh-cloud-service-clean-mosquitto-service-dead

saltmarsh-cloud-service-clean-ingester-{{ index }}-unit-file-absent:
  file.absent:
    - name: {{ paths.unit_dir }}/{{ service }}.service
    - require:
      - service: saltmarsh-cloud-service-clean-ingester-{{ index }}-service-dead
{%- endfor %}

saltmarsh-cloud-service-clean-mosquitto-service-dead:
  service.dead:
    - name: {{ cloud.broker.service }}
    - enable: false

saltmarsh-cloud-service-clean-mosquitto-dropin-file-absent:
  file.absent:
    - name: {{ paths.unit_dir }}/{{ cloud.broker.service }}.service.d/saltmarsh.conf
    - require:
      - service: saltmarsh-cloud-service-clean-mosquitto-service-dead
