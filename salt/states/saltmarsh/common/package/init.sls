{#- The project in its own venv at a pinned version, with only the extras this minion's roles need. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, roles with context %}
{%- set install = saltmarsh.install %}
{%- set extras = [] %}
{%- for role in roles %}
{%-   for extra in install.role_extras.get(role, []) if extra not in extras %}
{%-     do extras.append(extra) %}
{%-   endfor %}
{%- endfor %}
{%- set name = install.package ~ ('[' ~ extras | sort | join(',') ~ ']' if extras else '') %}
{%- set requirement = name ~ ' @ ' ~ install.source if install.source else name ~ '==' ~ install.version %}
{%- set stamp = install.venv ~ '/.saltmarsh-requirement' %}
{%- set pip_args = [] %}
{%- if install.index_url %}{% do pip_args.append('--index-url ' ~ install.index_url) %}{% endif %}
{%- if install.extra_index_url %}{% do pip_args.append('--extra-index-url ' ~ install.extra_index_url) %}{% endif %}

{%- if install.enabled %}
{%-   if install.system_packages %}

saltmarsh-common-package-pkg-installed:
  pkg.installed:
    - pkgs: {{ install.system_packages | json }}
    - require_in:
      - cmd: saltmarsh-common-package-venv-cmd-run
{%-   endif %}

saltmarsh-common-package-venv-cmd-run:
  cmd.run:
    - name: {{ install.python }} -m venv {{ install.venv }}
    - creates: {{ install.venv }}/bin/python

{#- The stamp records the exact requirement (version and extras), so adding a role to a minion
    reinstalls with the new extras even though the version did not change. #}
saltmarsh-common-package-pip-cmd-run:
  cmd.run:
    - name: >-
        {{ install.venv }}/bin/pip install --no-input --disable-pip-version-check {{ pip_args | join(' ') }}
        '{{ requirement }}' && printf '%s\n' '{{ requirement }}' > {{ stamp }}
    - unless: grep -qxF '{{ requirement }}' {{ stamp }}
    - require:
      - cmd: saltmarsh-common-package-venv-cmd-run
{%- else %}

saltmarsh-common-package-install-test-nop:
  test.nop:
    - name: saltmarsh install disabled; using {{ install.venv }}
{%- endif %}
