{#- Cloud Mosquitto (TLS listener for gateways, loopback listener for the ingesters), its hashed
    passwords and ACL, one TOML per ingester instance, and the commander's config when enabled. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- from tplroot ~ '/cloud/_cloud.jinja' import cloud, mosquitto, mosquitto_conf, mosquitto_passwd, mosquitto_acl,
      ingester_user, ingester_password, es_api_key, aws_key_id, aws_secret_key, tls, instances,
      ingester_state_dir, public_sites, public, commander_user, commander_password, commander_conf,
      commander_store_dir with context %}
{%- set group = saltmarsh.user.group %}

include:
  - {{ tplroot }}.common.config
  - {{ tplroot }}.cloud.package

saltmarsh-cloud-config-mosquitto-dir-file-directory:
  file.directory:
    - name: {{ paths.mosquitto_dir }}
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '0750'
    - makedirs: true

saltmarsh-cloud-config-mosquitto-data-dir-file-directory:
  file.directory:
    - name: {{ paths.mosquitto_data_dir }}
    - user: {{ mosquitto.user }}
    - group: {{ mosquitto.group }}
    - mode: '0750'
    - makedirs: true

{%- for name, key in [('ca', 'ca_cert'), ('cert', 'tls_cert'), ('key', 'tls_key')] %}

saltmarsh-cloud-config-tls-{{ name }}-file-managed:
  file.managed:
    - name: {{ tls[name ~ '_file'] }}
    - contents_pillar: saltmarsh:cloud:broker:{{ key }}
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '{{ '0640' if name == 'key' else '0644' }}'
    - show_changes: false
    - require:
      - file: saltmarsh-cloud-config-mosquitto-dir-file-directory
{%- endfor %}

{#- As on the gateway: the plain source lets Salt rehash only when a password changes. #}
saltmarsh-cloud-config-passwd-source-file-managed:
  file.managed:
    - name: {{ mosquitto_passwd }}.src
    - source: salt://{{ tplroot }}/files/cloud.passwd.src.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0600'
    - show_changes: false
    - context:
        ingester_user: {{ ingester_user }}
        commander_user: {{ commander_user | json }}
    - require:
      - file: saltmarsh-cloud-config-mosquitto-dir-file-directory

saltmarsh-cloud-config-passwd-cmd-run:
  cmd.run:
    - name: >-
        cp {{ mosquitto_passwd }}.src {{ mosquitto_passwd }}.tmp
        && {{ mosquitto.passwd_binary }} -U {{ mosquitto_passwd }}.tmp
        && chgrp {{ mosquitto.group }} {{ mosquitto_passwd }}.tmp
        && chmod 0640 {{ mosquitto_passwd }}.tmp
        && mv {{ mosquitto_passwd }}.tmp {{ mosquitto_passwd }}
    - unless: test {{ mosquitto_passwd }} -nt {{ mosquitto_passwd }}.src
    - require:
      - file: saltmarsh-cloud-config-passwd-source-file-managed
      - sls: {{ tplroot }}.cloud.package

saltmarsh-cloud-config-acl-file-managed:
  file.managed:
    - name: {{ mosquitto_acl }}
    - source: salt://{{ tplroot }}/files/cloud.acl.jinja
    - template: jinja
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '0640'
    - context:
        ingester_user: {{ ingester_user }}
        commander_user: {{ commander_user | json }}
        sites: {{ public_sites | json }}
    - require:
      - file: saltmarsh-cloud-config-mosquitto-dir-file-directory

saltmarsh-cloud-config-mosquitto-file-managed:
  file.managed:
    - name: {{ mosquitto_conf }}
    - source: salt://{{ tplroot }}/files/mosquitto.conf.jinja
    - template: jinja
    - user: root
    - group: {{ mosquitto.group }}
    - mode: '0640'
    - context:
        role: cloud
        settings: {{ public.broker | json }}
        max_message_bytes: {{ saltmarsh.max_message_bytes | int }}
        listeners:
          - port: {{ cloud.broker.local_port }}
            bind: 127.0.0.1
          - port: {{ cloud.broker.tls_port }}
            bind: {{ cloud.broker.bind }}
            tls: {{ tls | json }}
        password_file: {{ mosquitto_passwd }}
        acl_file: {{ mosquitto_acl }}
        data_dir: {{ paths.mosquitto_data_dir }}
        user: {{ mosquitto.user }}
    - require:
      - file: saltmarsh-cloud-config-mosquitto-dir-file-directory

{%- set secret_files = [(ingester_password, 'saltmarsh:cloud:ingester:password')] %}
{%- if cloud.elasticsearch.enabled %}
{%-   do secret_files.append((es_api_key, 'saltmarsh:cloud:elasticsearch:api_key')) %}
{%- endif %}
{%- if cloud.kinesis.enabled %}
{%-   do secret_files.append((aws_key_id, 'saltmarsh:cloud:kinesis:access_key_id')) %}
{%-   do secret_files.append((aws_secret_key, 'saltmarsh:cloud:kinesis:secret_access_key')) %}
{%- endif %}
{%- if commander_user %}
{%-   do secret_files.append((commander_password, 'saltmarsh:cloud:commander:password')) %}
{%- endif %}
{%- for path, key in secret_files %}

saltmarsh-cloud-config-{{ path.split('/')[-1] }}-file-managed:
  file.managed:
    - name: {{ path }}
    - contents_pillar: {{ key }}
    {#- The ingester refuses a secret file with any group or other permission bits, as ssh does. #}
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0600'
    - show_changes: false
    - require:
      - file: saltmarsh-common-config-secrets-dir-file-directory
{%- endfor %}

saltmarsh-cloud-config-ingester-state-dir-file-directory:
  file.directory:
    - name: {{ ingester_state_dir }}
    - user: {{ saltmarsh.user.name }}
    - group: {{ group }}
    - mode: '0750'
    - require:
      - file: saltmarsh-common-config-state-dir-file-directory
{%- for instance in instances %}

saltmarsh-cloud-config-ingester-{{ loop.index }}-file-managed:
  file.managed:
    - name: {{ instance.conf }}
    - source: salt://{{ tplroot }}/files/ingester.toml.jinja
    - template: jinja
    - user: root
    - group: {{ group }}
    - mode: '0640'
    - context:
        tplroot: {{ tplroot }}
        instance: {{ instance | json }}
        settings: {{ public.ingester | json }}
        max_message_bytes: {{ saltmarsh.max_message_bytes | int }}
        elasticsearch: {{ public.elasticsearch | json }}
        kinesis: {{ public.kinesis | json }}
        sites: {{ public_sites | json }}
        status_dir: {{ paths.status_dir | json }}
        metrics_dir: {{ paths.metrics_dir | json }}
        state_dir: {{ ingester_state_dir | json }}
        broker_port: {{ cloud.broker.local_port }}
        ingester_user: {{ ingester_user }}
        password_file: {{ ingester_password | json }}
        es_api_key: {{ es_api_key | json }}
        aws_key_id: {{ aws_key_id | json }}
        aws_secret_key: {{ aws_secret_key | json }}
    - require:
      - file: saltmarsh-common-config-config-dir-file-directory
{%- endfor %}
{%- if commander_user %}

{#- Root's: `saltmarsh cmd` runs as root on the master, beside the signing key. #}
saltmarsh-cloud-config-commander-store-dir-file-directory:
  file.directory:
    - name: {{ commander_store_dir }}
    - user: root
    - group: root
    - mode: '0700'
    - require:
      - file: saltmarsh-common-config-state-dir-file-directory

saltmarsh-cloud-config-commander-file-managed:
  file.managed:
    - name: {{ commander_conf }}
    - source: salt://{{ tplroot }}/files/commander.toml.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0600'
    - context:
        tplroot: {{ tplroot }}
        commander: {{ public.commander | json }}
        settings: {{ public.ingester | json }}
        elasticsearch: {{ public.elasticsearch | json }}
        state_dir: {{ ingester_state_dir | json }}
        es_api_key: {{ es_api_key | json }}
        store: {{ (commander_store_dir ~ '/rollouts.db') | json }}
        broker_port: {{ cloud.broker.local_port }}
        commander_user: {{ commander_user }}
        password_file: {{ commander_password | json }}
    - require:
      - file: saltmarsh-common-config-config-dir-file-directory
{%- endif %}
