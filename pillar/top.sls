{#- Every assignment is by minion id (glob on the id), from fleet.yaml:
    - a gateway gets its site, its own secrets, its uplink credential and its sensors' passwords
      (it hashes them into Mosquitto's password file);
    - a sensor gets its site and its own password;
    - a cloud minion gets cloud.sls, the cloud secrets, every site (for ACLs and Kinesis rules)
      and every gateway's uplink credential (for the cloud broker's password file). #}
{%- import_yaml 'fleet.yaml' as fleet %}
base:
{%- for minion in fleet.cloud.minions %}
  '{{ minion }}':
    - cloud
    - secrets.cloud
{%-   for site_id, members in fleet.sites.items() %}
    - sites.{{ site_id }}
{%-     for gateway in members.gateways %}
    - secrets.{{ site_id }}.{{ gateway }}-uplink
{%-     endfor %}
{%-   endfor %}
{%- endfor %}
{%- for site_id, members in fleet.sites.items() %}
{%-   for gateway in members.gateways %}
  '{{ gateway }}':
    - sites.{{ site_id }}
    - secrets.{{ site_id }}.{{ gateway }}
    - secrets.{{ site_id }}.{{ gateway }}-uplink
{%-     for sensor in members.sensors %}
    - secrets.{{ site_id }}.{{ sensor }}
{%-     endfor %}
{%-   endfor %}
{%-   for sensor in members.sensors %}
  '{{ sensor }}':
    - sites.{{ site_id }}
    - secrets.{{ site_id }}.{{ sensor }}
{%-   endfor %}
{%- endfor %}
