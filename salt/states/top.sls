# Roles come from the roles grain, sites from the site grain. Grains are fine for choosing
# *which states* run; secrets are never chosen by grains (see pillar/top.sls).
base:
  'G@roles:sensor and G@site:*':
    - match: compound
    - saltmarsh.sensor
  'G@roles:gateway and G@site:*':
    - match: compound
    - saltmarsh.gateway
  'G@roles:cloud':
    - match: compound
    - saltmarsh.cloud
  'G@roles:master':
    - match: compound
    - saltmarsh.master
