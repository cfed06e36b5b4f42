//! AFL target `replicate_request`: see [`vkv_fuzz::check_replicate_request`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_replicate_request);
}
