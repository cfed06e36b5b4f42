//! AFL target `write_request`: see [`vkv_fuzz::check_write_request`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_write_request);
}
