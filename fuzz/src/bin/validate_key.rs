//! AFL target `validate_key`: see [`vkv_fuzz::check_validate_key`].

fn main() {
    vkv_fuzz::run(vkv_fuzz::check_validate_key);
}
