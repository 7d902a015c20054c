{#- The site gateway: Mosquitto for the site's sensors, the store-and-forward forwarder to the
    cloud, optionally the BLE collector, and the beacons that report the gateway's health. #}
include:
  - saltmarsh.common
  - .package
  - .config
  - .service
  - .beacons
