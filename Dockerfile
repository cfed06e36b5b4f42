# vkv replica image, built with no image pulls: FROM scratch plus the statically linked release
# binaries, which must be built first: scripts/docker-build.sh does that, then `docker build -t
# vkv:local .` (scripts/docker-up.sh and scripts/swarm-up.sh start with it). By hand (debug info
# stripped to keep the image ~17 MB):
#   RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
#     cargo build --release --target x86_64-unknown-linux-gnu --bin vkv-server --bin vkv
#
# Nothing else is needed at run time:
# - no shared libraries: glibc is linked in statically (crt-static);
# - no NSS / getaddrinfo: peer names (kv1..kv5) are resolved by reqwest's hickory resolver, which
#   reads the /etc/resolv.conf and /etc/hosts that Docker mounts into every container (on a
#   user-defined network the nameserver is Docker's embedded DNS, 127.0.0.11);
# - no TLS roots (peers speak plain HTTP), no shell, no user database (runs as root, data in /data).
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/vkv-server target/x86_64-unknown-linux-gnu/release/vkv /usr/local/bin/
ENV PATH=/usr/local/bin RUST_LOG=info
WORKDIR /data
EXPOSE 7000
# Exec form, no shell: `vkv status` exits 0 only when the replica on this container answers.
# A liveness check on purpose (like /livez): Swarm restarts a task whose check fails, and a
# restart cures a hung process, not a recovery in progress or a full disk (/readyz's 503s) —
# restarting a recovering replica would only start its recovery over.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/vkv", "--server", "127.0.0.1:7000", "status"]
ENTRYPOINT ["/usr/local/bin/vkv-server"]
