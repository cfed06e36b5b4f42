//! AFL target `delete_request`: see [`vkv_fuzz::check_delete_request`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_delete_request);
}
