include:
  - .config.clean
  - .package.clean
