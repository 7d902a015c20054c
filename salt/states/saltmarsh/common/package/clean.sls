{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh with context %}
{%- set sls_config_clean = tplroot ~ '.common.config.clean' %}
include:
  - {{ sls_config_clean }}

{%- if saltmarsh.install.enabled %}

saltmarsh-common-package-clean-venv-file-absent:
  file.absent:
    - name: {{ saltmarsh.install.venv }}
    - require:
      - sls: {{ sls_config_clean }}
{%- else %}

{#- A venv the formula did not install (a developer's checkout) is not the formula's to delete. #}
saltmarsh-common-package-clean-venv-test-nop:
  test.nop:
    - name: saltmarsh install disabled; leaving {{ saltmarsh.install.venv }}
{%- endif %}
