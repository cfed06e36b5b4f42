//! AFL target `peer_head`: see [`vkv_fuzz::check_peer_head`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_peer_head);
}
