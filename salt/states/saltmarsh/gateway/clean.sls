include:
  - .beacons.clean
  - .service.clean
  - .config.clean
  - .package.clean
