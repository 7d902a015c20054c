# Site "example": the Vagrant test fleet and the lab's default (salt/fleet.yaml: gw1 on the uplink
# at 192.168.56.11 and on the site LAN at 192.168.57.1, the cloud on master at 192.168.56.10).
# Non-secret: devices, where they are, thresholds, Kinesis rules and the uplink.
# Secrets live in secrets/example/<minion id>.sls.
saltmarsh:
  sites:
    example:
      name: Example marsh
      # Where this site's sensors find the gateway broker.
      broker:
        host: 192.168.57.1
        port: 1883
      # The cloud broker, and the fleet CA pinned for it (public, not secret).
      uplink:
        host: 192.168.56.10
        port: 8883
        tls: true
        ca_cert: |
          -----BEGIN CERTIFICATE-----
          PLACEHOLDER-EXAMPLE-FLEET-CA-replace-with-your-fleet-CA-certificate
          -----END CERTIFICATE-----
      gateways:
        gw1: {}
      devices:
        sensor1:
          model: HW-MD202
          driver: {type: simulated, pin: D4, seed: 1}
          location: {lat: -27.4698, lon: 153.0251, place: garden}
        sensor2:
          model: HW-MD202
          driver: {type: simulated, pin: D17, seed: 2, base_temperature_c: 18.0}
          location: {lat: -27.4701, lon: 153.0262, place: greenhouse}
      # BLE thermometers, heard by the BLE collector on gw1 (saltmarsh pillar add-ble-device writes
      # this; a bthome device's bindkey goes in secrets/example/gw1.sls). Off in the test fleet.
      # ble:
      #   gateway: gw1
      #   discovery: false
      #   devices:
      #     "54:48:E6:8F:80:A5": {kind: bthome, place: cold room 2, expected_interval_s: 60}
      # Rendered into the ingesters' Kinesis selection as the rule "example-thresholds".
      thresholds:
        temperature: {above: 35, below: -5}
        humidity: {above: 95}
      kinesis:
        select:
          - name: alerts
            kinds: [alert]
          - name: door-events
            kinds: [event]
            names: ['door_*', tamper]
