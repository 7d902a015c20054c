{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{#- Spools hold acked-but-unsent data: clean removes config, never state_dir. #}
{%- for path in [paths.config_dir, paths.tmpfiles_dir ~ '/saltmarsh.conf', paths.journald_dir ~ '/saltmarsh.conf'] %}

saltmarsh-common-config-clean-{{ loop.index }}-file-absent:
  file.absent:
    - name: {{ path }}
{%- endfor %}
{%- if saltmarsh.user.manage %}

saltmarsh-common-config-clean-user-absent:
  user.absent:
    - name: {{ saltmarsh.user.name }}
{%- endif %}
