"""A gateway in a qemu virtual machine, for power cuts that `kill -9` cannot fake.

In: Debian's apt (a kernel, debootstrap, busybox-static, qemu under TCG), this checkout's
sources and the venv's libraries, and a guest plan (which services, their configs).
Out, each piece usable alone: the kernel and its initramfs (`kernel`), the guest's root image
built from Debian packages and cached by content (`rootfs`), data disks written from host files
(`disks`), what the guest reports on its serial console, parsed (`console`), and one machine
started and cut by `kill -9` of qemu (`machine`). The power-cut bench builds on these.
"""
