{#- Mosquitto from Debian by default; or its container image behind gateway:mosquitto:docker:enabled. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh with context %}
{%- set mosquitto = saltmarsh.gateway.mosquitto %}
{%- if mosquitto.docker.enabled %}

{#- No bin_env: Salt's pip runs the minion's own interpreter (`python -m pip`), the one that must
    import the SDK; a system pip would install it where Salt never looks. #}
saltmarsh-gateway-package-docker-sdk-pip-installed:
  pip.installed:
    - name: {{ mosquitto.docker.sdk | yaml_dquote }}
    - reload_modules: true

saltmarsh-gateway-package-mosquitto-docker-image-present:
  docker_image.present:
    - name: {{ mosquitto.docker.image }}
    - require:
      - pip: saltmarsh-gateway-package-docker-sdk-pip-installed
{%- else %}

saltmarsh-gateway-package-mosquitto-pkg-installed:
  pkg.installed:
    - name: {{ mosquitto.package }}
{%- endif %}
