{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- from tplroot ~ '/cloud/_cloud.jinja' import cloud, mosquitto, mosquitto_conf, mosquitto_dropin, instances,
      ingester_state_dir with context %}
{%- set sls_config = tplroot ~ '.cloud.config' %}
include:
  - {{ sls_config }}

saltmarsh-cloud-service-mosquitto-dropin-file-managed:
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

saltmarsh-cloud-service-mosquitto-running:
  service.running:
    - name: {{ cloud.broker.service }}
    - enable: true
    - watch:
      - file: saltmarsh-cloud-service-mosquitto-dropin-file-managed
      - sls: {{ sls_config }}
{%- for instance in instances %}

saltmarsh-cloud-service-ingester-{{ loop.index }}-unit-file-managed:
  file.managed:
    - name: {{ paths.unit_dir }}/{{ instance.service }}.service
    - source: salt://{{ tplroot }}/files/unit.service.jinja
    - template: jinja
    - makedirs: true
    - mode: '0644'
    - context:
        description: saltmarsh ingester {{ instance.id }}
        exec_start: {{ paths.bin }}/saltmarsh-ingester --config {{ instance.conf }}
        syslog_identifier: {{ instance.service }}
        user: {{ saltmarsh.user.name }}
        group: {{ saltmarsh.user.group }}
        limits: {{ saltmarsh.limits.ingester | json }}
        read_write_paths: [{{ ingester_state_dir }}, {{ paths.status_dir }}{{ (', ' ~ paths.metrics_dir) if paths.metrics_dir else '' }}]
        after: [{{ cloud.broker.service }}.service]

saltmarsh-cloud-service-ingester-{{ loop.index }}-running:
  service.running:
    - name: {{ instance.service }}
    - enable: true
    - require:
      - service: saltmarsh-cloud-service-mosquitto-running
    - watch:
      - file: saltmarsh-cloud-service-ingester-{{ loop.index }}-unit-file-managed
      - sls: {{ sls_config }}
{%- endfor %}
