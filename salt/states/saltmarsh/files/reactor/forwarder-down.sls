{#- Reactor (rendered by the master for each service beacon event; not a state of this formula).
    The gateway's service beacon fires on every change of the forwarder's state; restart it only
    when it reports it down. -#}
{%- set service = data.get('service_name', '') %}
{%- if service and data.get(service, {}).get('running') is sameas false %}
saltmarsh-reactor-forwarder-restart:
  local.service.restart:
    - tgt: {{ data['id'] }}
    - args:
      - name: {{ service }}
{%- endif %}
