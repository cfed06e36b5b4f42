//! AFL target `peer_read_request`: see [`vkv_fuzz::check_peer_read_request`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_peer_read_request);
}
