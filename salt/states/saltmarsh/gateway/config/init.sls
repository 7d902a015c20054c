{#- Mosquitto's config, hashed password file and ACL; the forwarder's TOML, credentials and TLS;
    the BLE collector's TOML, credential and bindkeys when it runs here. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths, site_id, site with context %}
{%- from tplroot ~ '/gateway/_gateway.jinja' import gateway_id, gw, mosquitto, forwarder, uplink, uplink_tls,
      forwarder_user, mosquitto_conf, mosquitto_passwd, mosquitto_acl, forwarder_conf, tls, passwd_command,
      ble_site, ble_devices, ble_device_ids, ble_discovery, ble_runs, ble_user, ble_encrypted, ble_conf, ble_password, ble_keys_dir
      with context %}
{%- set group = saltmarsh.user.group %}
{%- set pillar_site = 'saltmarsh:sites:' ~ site_id %}
{%- set secrets = {
      'local': paths.secrets_dir ~ '/forwarder-local-password',
      'uplink': paths.secrets_dir ~ '/forwarder-uplink-password',
    } %}

include:
  - {{ tplroot }}.common.config
  - {{ tplroot }}.gateway.package

saltmarsh-gateway-config-mosquitto-dir-file-directory:
  file.directory:
    - name: {{ paths.mosquitto_dir }}
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '0750'
    - makedirs: true

saltmarsh-gateway-config-mosquitto-data-dir-file-directory:
  file.directory:
    - name: {{ paths.mosquitto_data_dir }}
    - user: {{ mosquitto.user }}
    - group: {{ mosquitto.group }}
    - mode: '0750'
    - makedirs: true

{#- Plain text, root only, kept so that Salt can tell when to rehash: mosquitto_passwd salts every
    hash afresh, so hashing on each run would never be idempotent. #}
saltmarsh-gateway-config-passwd-source-file-managed:
  file.managed:
    - name: {{ mosquitto_passwd }}.src
    - source: salt://{{ tplroot }}/files/gateway.passwd.src.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0600'
    - show_changes: false
    - context:
        site_id: {{ site_id | json }}
        gateway_id: {{ gateway_id | json }}
        forwarder_user: {{ forwarder_user | json }}
        ble_user: {{ (ble_user if ble_runs else '') | json }}
    - require:
      - file: saltmarsh-gateway-config-mosquitto-dir-file-directory

saltmarsh-gateway-config-passwd-cmd-run:
  cmd.run:
    - name: >-
        cp {{ mosquitto_passwd }}.src {{ mosquitto_passwd }}.tmp
        && {{ passwd_command }} -U {{ mosquitto_passwd }}.tmp
        && chgrp {{ mosquitto.group }} {{ mosquitto_passwd }}.tmp
        && chmod 0640 {{ mosquitto_passwd }}.tmp
        && mv {{ mosquitto_passwd }}.tmp {{ mosquitto_passwd }}
    - unless: test {{ mosquitto_passwd }} -nt {{ mosquitto_passwd }}.src
    - require:
      - file: saltmarsh-gateway-config-passwd-source-file-managed
      - sls: {{ tplroot }}.gateway.package

saltmarsh-gateway-config-acl-file-managed:
  file.managed:
    - name: {{ mosquitto_acl }}
    - source: salt://{{ tplroot }}/files/gateway.acl.jinja
    - template: jinja
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '0640'
    - context:
        site_id: {{ site_id | json }}
        forwarder_user: {{ forwarder_user | json }}
        devices: {{ site.get('devices', {}).keys() | list | json }}
        ble_user: {{ (ble_user if ble_runs else '') | json }}
        ble_devices: {{ ble_device_ids | json }}
        ble_discovery: {{ ble_discovery | json }}
    - require:
      - file: saltmarsh-gateway-config-mosquitto-dir-file-directory

saltmarsh-gateway-config-mosquitto-file-managed:
  file.managed:
    - name: {{ mosquitto_conf }}
    - source: salt://{{ tplroot }}/files/mosquitto.conf.jinja
    - template: jinja
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '0640'
    - context:
        role: gateway
        settings: {{ mosquitto | json }}
        max_message_bytes: {{ saltmarsh.max_message_bytes | int }}
        listeners:
          - port: {{ mosquitto.port }}
            bind: {{ mosquitto.bind }}
        password_file: {{ mosquitto_passwd }}
        acl_file: {{ mosquitto_acl }}
        data_dir: {{ paths.mosquitto_data_dir }}
        user: {{ mosquitto.user }}
    - require:
      - file: saltmarsh-gateway-config-mosquitto-dir-file-directory

{%- for name, path in secrets | dictsort %}

saltmarsh-gateway-config-{{ name }}-password-file-managed:
  file.managed:
    - name: {{ path }}
    - contents_pillar: {{ pillar_site }}:gateways:{{ gateway_id }}:{{ 'forwarder_password' if name == 'local' else 'uplink_password' }}
    {#- The forwarder refuses a secret file with any group or other permission bits, as ssh does. #}
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0600'
    - show_changes: false
    - require:
      - file: saltmarsh-common-config-secrets-dir-file-directory
{%- endfor %}
{%- if uplink_tls %}

saltmarsh-gateway-config-uplink-ca-file-managed:
  file.managed:
    - name: {{ tls.ca_file }}
    - contents_pillar: {{ pillar_site }}:uplink:ca_cert
    - mode: '0644'
    - require:
      - file: saltmarsh-common-config-tls-dir-file-directory

saltmarsh-gateway-config-uplink-cert-file-managed:
  file.managed:
    - name: {{ tls.cert_file }}
    - contents_pillar: {{ pillar_site }}:gateways:{{ gateway_id }}:tls_cert
    - mode: '0644'
    - require:
      - file: saltmarsh-common-config-tls-dir-file-directory

saltmarsh-gateway-config-uplink-key-file-managed:
  file.managed:
    - name: {{ tls.key_file }}
    - contents_pillar: {{ pillar_site }}:gateways:{{ gateway_id }}:tls_key
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0600'
    - show_changes: false
    - require:
      - file: saltmarsh-common-config-tls-dir-file-directory
{%- endif %}

saltmarsh-gateway-config-forwarder-state-dir-file-directory:
  file.directory:
    - name: {{ paths.state_dir }}/forwarder
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0750'
    - require:
      - file: saltmarsh-common-config-state-dir-file-directory

saltmarsh-gateway-config-forwarder-file-managed:
  file.managed:
    - name: {{ forwarder_conf }}
    - source: salt://{{ tplroot }}/files/forwarder.toml.jinja
    - template: jinja
    - user: root
    - group: {{ group }}
    - mode: '0640'
    - context:
        gateway_id: {{ gateway_id | json }}
        site_id: {{ site_id | json }}
        settings: {{ forwarder | json }}
        max_message_bytes: {{ saltmarsh.max_message_bytes | int }}
        confirmations: {{ saltmarsh.confirmations | json }}
        commands: {{ saltmarsh.commands | json }}
        state_dir: {{ (paths.state_dir ~ '/forwarder') | json }}
        status_dir: {{ paths.status_dir | json }}
        metrics_dir: {{ paths.metrics_dir | json }}
        local_port: {{ mosquitto.port }}
        local_user: {{ forwarder_user | json }}
        local_password_file: {{ secrets.local | json }}
        uplink: {{ uplink | json }}
        uplink_user: {{ ('gateway-' ~ gateway_id) | json }}
        uplink_password_file: {{ secrets.uplink | json }}
        uplink_tls: {{ uplink_tls }}
        tls: {{ tls | json }}
    - require:
      - file: saltmarsh-common-config-config-dir-file-directory

saltmarsh-gateway-config-ble-state-dir-file-directory:
  file.directory:
    - name: {{ paths.state_dir }}/ble
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0750'
    - require:
      - file: saltmarsh-common-config-state-dir-file-directory
{%- if ble_runs %}

saltmarsh-gateway-config-ble-password-file-managed:
  file.managed:
    - name: {{ ble_password }}
    - contents_pillar: {{ pillar_site }}:gateways:{{ gateway_id }}:ble_collector_password
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0600'
    - show_changes: false
    - require:
      - file: saltmarsh-common-config-secrets-dir-file-directory
{%-   for mac in ble_encrypted | sort %}

{#- A MAC holds colons, pillar's path separator, so contents_pillar cannot name it: the template
    reads the bindkey from pillar itself. #}
saltmarsh-gateway-config-ble-key-{{ mac | replace(':', '') }}-file-managed:
  file.managed:
    - name: {{ ble_keys_dir }}/{{ mac | replace(':', '') }}.key
    - source: salt://{{ tplroot }}/files/ble.bindkey.jinja
    - template: jinja
    - makedirs: true
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0600'
    - show_changes: false
    - context:
        site_id: {{ site_id | json }}
        gateway_id: {{ gateway_id | json }}
        mac: {{ mac | json }}
    - require:
      - file: saltmarsh-common-config-secrets-dir-file-directory
{%-   endfor %}

{#- The bindkeys of devices no longer in pillar go: clean keeps only the files required here. #}
saltmarsh-gateway-config-ble-keys-dir-file-directory:
  file.directory:
    - name: {{ ble_keys_dir }}
    - user: root
    - group: {{ group }}
    - mode: '0750'
    - clean: true
    - require:
      - file: saltmarsh-common-config-secrets-dir-file-directory
{%-   for mac in ble_encrypted | sort %}
      - file: saltmarsh-gateway-config-ble-key-{{ mac | replace(':', '') }}-file-managed
{%-   endfor %}

saltmarsh-gateway-config-ble-file-managed:
  file.managed:
    - name: {{ ble_conf }}
    - source: salt://{{ tplroot }}/files/ble.toml.jinja
    - template: jinja
    - user: root
    - group: {{ group }}
    - mode: '0640'
    - context:
        collector: {{ ble_user | json }}
        site_id: {{ site_id | json }}
        settings: {{ saltmarsh.gateway.ble | json }}
        max_message_bytes: {{ saltmarsh.max_message_bytes | int }}
        confirmations: {{ saltmarsh.confirmations | json }}
        state_dir: {{ (paths.state_dir ~ '/ble') | json }}
        status_dir: {{ paths.status_dir | json }}
        metrics_dir: {{ paths.metrics_dir | json }}
        discovery: {{ ble_discovery | json }}
        stale_factor: {{ ble_site.get('stale_factor', 3) | float }}
        local_port: {{ mosquitto.port }}
        password_file: {{ ble_password | json }}
        devices: {{ ble_devices | json }}
        keys_dir: {{ ble_keys_dir | json }}
        encrypted: {{ ble_encrypted | json }}
    - require:
      - file: saltmarsh-common-config-config-dir-file-directory
{%- else %}
{%-   for path in [ble_conf, ble_password, ble_keys_dir] %}

{#- No BLE collector here (any more): nothing of its config, credential or bindkeys stays. #}
saltmarsh-gateway-config-ble-{{ path.split('/')[-1] | replace('.', '-') }}-file-absent:
  file.absent:
    - name: {{ path }}
{%-   endfor %}
{%- endif %}
