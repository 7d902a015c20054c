{%- for name in ['saltmarsh_spool', 'service', 'load', 'diskusage'] %}

saltmarsh-gateway-beacons-clean-{{ name | replace('_', '-') }}-beacon-absent:
  beacon.absent:
    - name: {{ name }}
    - save: true
{%- endfor %}
