//! AFL target `digest_request`: see [`vkv_fuzz::check_digest_request`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_digest_request);
}
