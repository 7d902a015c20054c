{#- The service user, the directories every role shares, tmpfiles.d for /run, journald limits. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set user = saltmarsh.user %}
{%- if user.manage %}

saltmarsh-common-config-group-present:
  group.present:
    - name: {{ user.group }}
    - system: true

saltmarsh-common-config-user-present:
  user.present:
    - name: {{ user.name }}
    - gid: {{ user.group }}
    - home: {{ user.home }}
    - createhome: false
    - shell: /usr/sbin/nologin
    - system: true
    {#- optional: a gpio group exists only on Raspberry Pi OS #}
    - optional_groups: {{ user.extra_groups | json }}
    - require:
      - group: saltmarsh-common-config-group-present
    - require_in:
      - file: saltmarsh-common-config-state-dir-file-directory
{%- endif %}

{#- Config and secrets: readable by the services, writable only by root (Salt). #}
{%- for name in ['config_dir', 'secrets_dir', 'tls_dir'] %}

saltmarsh-common-config-{{ name | replace('_', '-') }}-file-directory:
  file.directory:
    - name: {{ paths[name] }}
    - user: root
    - group: {{ user.group }}
    - mode: '0750'
    - makedirs: true
{%- endfor %}

{%- for name in ['state_dir', 'status_dir'] %}

saltmarsh-common-config-{{ name | replace('_', '-') }}-file-directory:
  file.directory:
    - name: {{ paths[name] }}
    - user: {{ user.name }}
    - group: {{ user.group }}
    - mode: '{{ '0755' if name == 'status_dir' else '0750' }}'
    - makedirs: true
{%- endfor %}

{%- if paths.metrics_dir %}

{#- The services write here as their own user; node_exporter only reads. #}
saltmarsh-common-config-metrics-dir-file-directory:
  file.directory:
    - name: {{ paths.metrics_dir }}
    - user: root
    - group: {{ user.group }}
    - mode: '0775'
    - makedirs: true
{%- endif %}

{#- /run is a tmpfs: recreate the status directory at every boot, before any service starts. #}
saltmarsh-common-config-tmpfiles-file-managed:
  file.managed:
    - name: {{ paths.tmpfiles_dir }}/saltmarsh.conf
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (saltmarsh formula)
        d {{ saltmarsh.paths.status_dir }} 0755 {{ user.name }} {{ user.group }} -

saltmarsh-common-config-journald-file-managed:
  file.managed:
    - name: {{ paths.journald_dir }}/saltmarsh.conf
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (saltmarsh formula): every saltmarsh service logs to the journal.
        [Journal]
        Storage={{ saltmarsh.journald.storage }}
        SystemMaxUse={{ saltmarsh.journald.system_max_use }}

{%- if paths.root == '/' %}

{#- Only where systemd is actually running (not in a container build). #}
saltmarsh-common-config-journald-cmd-run:
  cmd.run:
    - name: systemctl restart systemd-journald
    - onlyif: test -d /run/systemd/system
    - onchanges:
      - file: saltmarsh-common-config-journald-file-managed
{%- endif %}
