{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ '/map.jinja' import saltmarsh, paths with context %}
{%- from tplroot ~ '/master/_master.jinja' import master_conf, reactor_file, master_settings with context %}

saltmarsh-master-config-file-managed:
  file.managed:
    - name: {{ master_conf }}
    - source: salt://{{ tplroot }}/files/master.conf.jinja
    - template: jinja
    - makedirs: true
    - mode: '0644'
    - context:
        settings: {{ master_settings | json }}

{#- Copied verbatim: the master renders it per event, with the event's `data`. #}
saltmarsh-master-config-reactor-file-managed:
  file.managed:
    - name: {{ reactor_file }}
    - source: salt://{{ tplroot }}/files/reactor/forwarder-down.sls
    - makedirs: true
    - mode: '0644'
