{#- Mosquitto (Debian's unit with a saltmarsh drop-in, or a container), the forwarder, the BLE collector. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths, site_id, site with context %}
{%- from tplroot ~ '/gateway/_gateway.jinja' import gateway_id, mosquitto, forwarder, mosquitto_conf,
      mosquitto_dropin, forwarder_conf, forwarder_unit, ble_unit, ble_runs, ble_user, ble_conf with context %}
{%- set sls_config = tplroot ~ '.gateway.config' %}
{%- set ble = saltmarsh.gateway.ble %}
include:
  - {{ sls_config }}
{%- if mosquitto.docker.enabled %}

saltmarsh-gateway-service-mosquitto-docker-container-running:
  docker_container.running:
    - name: {{ mosquitto.docker.container }}
    - image: {{ mosquitto.docker.image }}
    {#- Same paths inside as outside, so the rendered config needs no second variant. #}
    - binds:
      - {{ paths.mosquitto_dir }}:{{ paths.mosquitto_dir }}:ro
      - {{ paths.mosquitto_data_dir }}:{{ paths.mosquitto_data_dir }}:rw
    - command: mosquitto -c {{ mosquitto_conf }}
    - network_mode: host
    - restart_policy: unless-stopped
    - memory: {{ saltmarsh.limits.mosquitto.memory_max }}
    - watch:
      - sls: {{ sls_config }}
{%-   set mosquitto_req = 'docker_container: saltmarsh-gateway-service-mosquitto-docker-container-running' %}
{%- else %}

saltmarsh-gateway-service-mosquitto-dropin-file-managed:
  file.managed:
    - name: {{ mosquitto_dropin }}
    - source: salt://{{ tplroot }}/files/mosquitto-dropin.conf.jinja
    - template: jinja
    - makedirs: true
    - mode: '0644'
    - context:
        binary: {{ mosquitto.binary }}
        conf_file: {{ mosquitto_conf }}
        data_dir: {{ paths.mosquitto_data_dir }}
        limits: {{ saltmarsh.limits.mosquitto | json }}

saltmarsh-gateway-service-mosquitto-running:
  service.running:
    - name: {{ mosquitto.service }}
    - enable: true
    - watch:
      - file: saltmarsh-gateway-service-mosquitto-dropin-file-managed
      - sls: {{ sls_config }}
{%-   set mosquitto_req = 'service: saltmarsh-gateway-service-mosquitto-running' %}
{%- endif %}
{%- if forwarder.enabled %}

saltmarsh-gateway-service-forwarder-unit-file-managed:
  file.managed:
    - name: {{ forwarder_unit }}
    - source: salt://{{ tplroot }}/files/unit.service.jinja
    - template: jinja
    - makedirs: true
    - mode: '0644'
    - context:
        description: saltmarsh forwarder ({{ gateway_id }}, site {{ site_id }})
        exec_start: {{ paths.bin }}/saltmarsh-forwarder --config {{ forwarder_conf }}
        syslog_identifier: {{ forwarder.service }}
        user: {{ saltmarsh.user.name }}
        group: {{ saltmarsh.user.group }}
        limits: {{ saltmarsh.limits.forwarder | json }}
        read_write_paths: [{{ paths.state_dir }}/forwarder, {{ paths.status_dir }}{{ (', ' ~ paths.metrics_dir) if paths.metrics_dir else '' }}]
        after: [{{ mosquitto.service }}.service]

saltmarsh-gateway-service-forwarder-running:
  service.running:
    - name: {{ forwarder.service }}
    - enable: true
    - require:
      - {{ mosquitto_req }}
    - watch:
      - file: saltmarsh-gateway-service-forwarder-unit-file-managed
      - sls: {{ sls_config }}
{%- endif %}
{%- if ble_runs %}

saltmarsh-gateway-service-ble-unit-file-managed:
  file.managed:
    - name: {{ ble_unit }}
    - source: salt://{{ tplroot }}/files/unit.service.jinja
    - template: jinja
    - makedirs: true
    - mode: '0644'
    - context:
        description: saltmarsh BLE collector {{ ble_user }} ({{ gateway_id }}, site {{ site_id }})
        exec_start: {{ paths.bin }}/{{ ble.command }} --config {{ ble_conf }}
        syslog_identifier: {{ ble.service }}
        user: {{ saltmarsh.user.name }}
        group: {{ saltmarsh.user.group }}
        limits: {{ saltmarsh.limits.ble | json }}
        read_write_paths: [{{ paths.state_dir }}/ble, {{ paths.status_dir }}{{ (', ' ~ paths.metrics_dir) if paths.metrics_dir else '' }}]
        after: [bluetooth.target, {{ mosquitto.service }}.service]
        {#- BlueZ is reached over D-Bus (AF_UNIX); raw HCI needs AF_BLUETOOTH. #}
        address_families: [AF_UNIX, AF_INET, AF_INET6, AF_BLUETOOTH]

saltmarsh-gateway-service-ble-running:
  service.running:
    - name: {{ ble.service }}
    - enable: true
    - require:
      - {{ mosquitto_req }}
    - watch:
      - file: saltmarsh-gateway-service-ble-unit-file-managed
      - sls: {{ sls_config }}
{%- else %}

{#- No BLE devices here (any more): the collector stops, its config is gone (gateway.config). #}
saltmarsh-gateway-service-ble-dead:
  service.dead:
    - name: {{ ble.service }}
    - enable: false

saltmarsh-gateway-service-ble-unit-file-absent:
  file.absent:
    - name: {{ ble_unit }}
    - require:
      - service: saltmarsh-gateway-service-ble-dead
{%- endif %}
