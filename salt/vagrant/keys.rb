# The Vagrant test fleet's Salt keys, made on this machine at the first `vagrant up`, never
# committed: a key pair in git is a key pair everyone has, and secret scanners rightly flag it.
# The master is pre-seeded with the minions' public halves, so no key needs accepting by hand.
require "fileutils"
require "openssl"

module SaltmarshKeys
  # One RSA pair per name: NAME.pem (private, mode 0600) and NAME.pub, as Salt reads them.
  def self.ensure(dir, names)
    FileUtils.mkdir_p(dir)
    names.uniq.each do |name|
      pem = File.join(dir, "#{name}.pem")
      pub = File.join(dir, "#{name}.pub")
      next if File.exist?(pem) && File.exist?(pub)
      key = OpenSSL::PKey::RSA.new(2048)
      File.write(pem, key.to_pem, perm: 0o600)
      File.write(pub, key.public_key.to_pem)
    end
  end
end
