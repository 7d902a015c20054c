{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths, site_id, site with context %}
{%- from tplroot ~ '/sensor/_device.jinja' import device, spec, sensor_conf, sensor_unit with context %}
{%- set driver_type = spec.get('driver', {}).get('type', 'simulated') %}
{%- set sls_config = tplroot ~ '.sensor.config' %}
include:
  - {{ sls_config }}

saltmarsh-sensor-service-unit-file-managed:
  file.managed:
    - name: {{ sensor_unit }}
    - source: salt://{{ tplroot }}/files/unit.service.jinja
    - template: jinja
    - makedirs: true
    - mode: '0644'
    - context:
        description: saltmarsh sensor agent ({{ device }})
        exec_start: {{ paths.bin }}/saltmarsh-sensor --config {{ sensor_conf }}
        syslog_identifier: {{ saltmarsh.sensor.service }}
        user: {{ saltmarsh.user.name }}
        group: {{ saltmarsh.user.group }}
        limits: {{ saltmarsh.limits.sensor | json }}
        read_write_paths: [{{ paths.state_dir }}/sensor, {{ paths.status_dir }}{{ (', ' ~ paths.metrics_dir) if paths.metrics_dir else '' }}]
        {#- A DHT is bit-banged through /dev/gpiomem: hide devices only from the simulated driver. #}
        private_devices: {{ driver_type in ['simulated', 'replay'] }}
        supplementary_groups: {{ saltmarsh.user.extra_groups | json }}

saltmarsh-sensor-service-running:
  service.running:
    - name: {{ saltmarsh.sensor.service }}
    - enable: true
    - watch:
      - file: saltmarsh-sensor-service-unit-file-managed
      - sls: {{ sls_config }}
