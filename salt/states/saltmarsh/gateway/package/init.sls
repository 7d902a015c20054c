{#- Mosquitto from Debian by default; or its container image behind gateway:mosquitto:docker:enabled. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh with context %}
{%- set mosquitto = saltmarsh.gateway.mosquitto %}
{%- if mosquitto.docker.enabled %}

saltmarsh-gateway-package-mosquitto-docker-image-present:
  docker_image.present:
    - name: {{ mosquitto.docker.image }}
{%- else %}

saltmarsh-gateway-package-mosquitto-pkg-installed:
  pkg.installed:
    - name: {{ mosquitto.package }}
{%- endif %}
