{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh with context %}

saltmarsh-cloud-package-mosquitto-pkg-installed:
  pkg.installed:
    - name: {{ saltmarsh.gateway.mosquitto.package }}
