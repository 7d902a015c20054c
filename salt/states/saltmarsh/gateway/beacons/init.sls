{#- Gateway health on the event bus: disk, load, the two services, and the forwarder's spool. The
    master's reactor restarts the forwarder when the service beacon reports it down. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- set gateway = saltmarsh.gateway %}
{%- set beacons = gateway.beacons %}
{%- set services = {} %}
{%- if not gateway.mosquitto.docker.enabled %}
{%-   do services.update({gateway.mosquitto.service: {'onchangeonly': True}}) %}
{%- endif %}
{%- if gateway.forwarder.enabled %}
{%-   do services.update({gateway.forwarder.service: {'onchangeonly': True}}) %}
{%- endif %}
{%- if beacons.enabled %}

saltmarsh-gateway-beacons-diskusage-beacon-present:
  beacon.present:
    - name: diskusage
    - save: true
    - '/': '{{ beacons.diskusage_percent }}%'
    - interval: {{ beacons.interval_s }}

saltmarsh-gateway-beacons-load-beacon-present:
  beacon.present:
    - name: load
    - save: true
    - averages:
        1m: [0.0, {{ beacons.load_5m_max * 2 }}]
        5m: [0.0, {{ beacons.load_5m_max }}]
        15m: [0.0, {{ beacons.load_5m_max }}]
    - onchangeonly: true
    - interval: {{ beacons.interval_s }}
{%-   if services %}

saltmarsh-gateway-beacons-service-beacon-present:
  beacon.present:
    - name: service
    - save: true
    - services: {{ services | json }}
    - interval: 10
{%-   endif %}

saltmarsh-gateway-beacons-saltmarsh-spool-beacon-present:
  beacon.present:
    - name: saltmarsh_spool
    - save: true
    - status_dir: {{ paths.status_dir }}
    - interval: {{ beacons.spool_interval_s }}
{%- endif %}
