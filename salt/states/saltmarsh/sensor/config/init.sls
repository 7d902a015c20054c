{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths, site_id, site with context %}
{%- from tplroot ~ '/sensor/_device.jinja' import device, spec, sensor_conf, sensor_password, sensor_ca with context %}
{%- set broker = site.broker %}

include:
  - {{ tplroot }}.common.config

saltmarsh-sensor-config-password-file-managed:
  file.managed:
    - name: {{ sensor_password }}
    - contents_pillar: saltmarsh:sites:{{ site_id }}:devices:{{ device }}:password
    {#- The agent refuses a secret file with any group or other permission bits, as ssh does. #}
    - user: {{ saltmarsh.user.name }}
    - group: {{ saltmarsh.user.group }}
    - mode: '0600'
    - show_changes: false
    - require:
      - file: saltmarsh-common-config-secrets-dir-file-directory
{%- if broker.get('tls', False) %}

saltmarsh-sensor-config-ca-file-managed:
  file.managed:
    - name: {{ sensor_ca }}
    - contents: {{ broker.ca_cert | json }}
    - mode: '0644'
    - require:
      - file: saltmarsh-common-config-tls-dir-file-directory
{%- endif %}

saltmarsh-sensor-config-file-managed:
  file.managed:
    - name: {{ sensor_conf }}
    - source: salt://{{ tplroot }}/files/sensor.toml.jinja
    - template: jinja
    - user: root
    - group: {{ saltmarsh.user.group }}
    - mode: '0640'
    - context:
        device: {{ device | json }}
        site_id: {{ site_id | json }}
        spec: {{ spec | json }}
        driver: {{ spec.get('driver', {}) | json }}
        broker: {{ broker | json }}
        settings: {{ saltmarsh.sensor | json }}
        max_message_bytes: {{ saltmarsh.max_message_bytes | int }}
        confirmations: {{ saltmarsh.confirmations | json }}
        commands: {{ saltmarsh.commands | json }}
        state_dir: {{ (paths.state_dir ~ '/sensor') | json }}
        status_dir: {{ paths.status_dir | json }}
        metrics_dir: {{ paths.metrics_dir | json }}
        password_file: {{ sensor_password | json }}
        ca_file: {{ sensor_ca | json }}
    - require:
      - file: saltmarsh-common-config-config-dir-file-directory

saltmarsh-sensor-config-state-dir-file-directory:
  file.directory:
    - name: {{ paths.state_dir }}/sensor
    - user: {{ saltmarsh.user.name }}
    - group: {{ saltmarsh.user.group }}
    - mode: '0750'
    - require:
      - file: saltmarsh-common-config-state-dir-file-directory
