{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set gateway = saltmarsh.gateway %}
{%- for service in [gateway.ble.service, gateway.forwarder.service] %}

saltmarsh-gateway-service-clean-{{ service }}-service-dead:
  service.dead:
    - name: {{ service }}
    - enable: false

saltmarsh-gateway-service-clean-{{ service }}-unit-file-absent:
  file.absent:
    - name: {{ paths.unit_dir }}/{{ service }}.service
    - require:
      - service: saltmarsh-gateway-service-clean-{{ service }}-service-dead
{%- endfor %}
{%- if gateway.mosquitto.docker.enabled %}

saltmarsh-gateway-service-clean-mosquitto-docker-container-absent:
  docker_container.absent:
    - name: {{ gateway.mosquitto.docker.container }}
    - force: true
{%- else %}

saltmarsh-gateway-service-clean-mosquitto-service-dead:
  service.dead:
    - name: {{ gateway.mosquitto.service }}
    - enable: false
    - require:
      - service: saltmarsh-gateway-service-clean-{{ gateway.forwarder.service }}-service-dead

saltmarsh-gateway-service-clean-mosquitto-dropin-file-absent:
  file.absent:
    - name: {{ paths.unit_dir }}/{{ gateway.mosquitto.service }}.service.d/saltmarsh.conf
    - require:
      - service: saltmarsh-gateway-service-clean-mosquitto-service-dead
{%- endif %}
